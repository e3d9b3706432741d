"""Published results (a paper's tables) kept beside the measured runs, in their own table.

    mapping.py    the one place where printed names meet medpeft's (methods, datasets, metrics, backbones)
    csvfile.py    reading and checking a CSV of published results
    store.py      the `reference_results` table (never mixed into the `runs` table)
    importer.py   CSV files -> mapped rows -> the table; the sets shipped with medpeft
    commands.py   `medpeft reference import|list`
"""
