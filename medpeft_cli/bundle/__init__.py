"""Result bundles: a tar.gz of finished runs that anyone can check before their results are merged.

    layout.py     what a bundle holds, which member names are allowed, the manifest of sha256 checksums
    create.py     `medpeft bundle create`: rows of a store + their run directories -> X.tar.gz
    verify.py     `medpeft bundle verify`: checksums, run keys from specs, test metrics from predictions
    merge.py      `medpeft bundle import`: verified runs -> the store, never over a stored run
    commands.py   the CLI sub-app
"""
