"""Studies: a YAML grid of runs (train/eval/diagnostic steps), run resumably, results in one SQLite database.

Modules: spec (the YAML model, grid expansion, placeholders, config hashes), kinds (study kinds: how a spec
becomes runs, which report sections show them), steps (step-kind plug-ins and StepContext), builtin_steps
(`train`, `eval`), store (results.sqlite: runs, claims, metrics, evaluations, diagnostics, artifacts; pandas/CSV
export), runner (claims, execution, executors local/submitit-local/slurm, `--launcher torchrun`), launch (one
step under torchrun), estimate (the dry run's tokens and FLOPs). Plug-ins: `study/kind_<name>.py`,
`study/step_<name>.py`, `report/section_<name>.py`, imported on first use.

    from cptlab.study.runner import run_study
    from cptlab.study.store import to_dataframes
    run_study("study.yaml", "runs/my-study")
    frames = to_dataframes("runs/my-study")     # runs, steps, metrics, evaluations, diagnostics, artifacts, meta
"""
