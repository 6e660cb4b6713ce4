"""Jobs: an attack's settings resolved, its data and model loaded, run in resumable chunks.

* :mod:`.attack`: AttackSpec, prepare, run_job (chunks, seeds, interruption);
* :mod:`.run`: `zoattack run` as one call (output folder rules, resume, summary);
* :mod:`.universal`: the universal-perturbation job;
* :mod:`.certify`: `zoattack defend certify` as one call.

Above the attacks and the plug-ins (models, data, remote, defense), below batches and the CLI;
results are recorded and summarized through :mod:`zoattack.results`.
"""
