"""Sweeps: grid files -> manifests of run specs -> local runs, Slurm arrays, learning-rate tuning.

grid.py       parse and expand a grid file (lists/ranges per spec field, exclusions, `lr: tuned`)
manifest.py   the plan: one entry per run (spec + run key), saved as JSON for array tasks
tune.py       Optuna learning-rate studies per (method, backbone, dataset[, fraction])
local.py      run what is missing, one after another or N at a time; run one manifest entry
slurm.py      write (and submit) sbatch array scripts that run manifest entries in a container
queue.py      what Slurm knows of a sweep's jobs (jobs.log, `scontrol -o show job`)
status.py     where a sweep stands: done / running / requeued / pending / failed / diverged per run
estimate.py   device time of a grid before submitting, from measured throughput
prefetch.py   fetch every backbone and dataset a grid needs, so compute nodes can run offline
launch.py     re-launch a command as N data-parallel processes through `accelerate launch`

Nothing here imports torch at module level; commands import what they use.
"""
