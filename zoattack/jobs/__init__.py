"""Jobs: an attack's settings resolved, its data and model loaded, run in resumable chunks.

Above the attacks and the plug-ins (models, data, remote, defense), below batches and the CLI.
"""
