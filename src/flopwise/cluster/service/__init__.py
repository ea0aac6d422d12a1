"""The cluster platform service: the scheduler core (flopwise.cluster) behind a live service that runs jobs.

- store.py     the state in a database through SQLAlchemy (SQLite in WAL mode by default, or PostgreSQL)
- jobfile.py   the job TOML: the core's JobSpec plus what to run (train, data, command)
- executor.py  jobs as processes on this machine (runner.py wraps each: exit status file, signal forwarding)
- daemon.py    the loop: events -> Scheduler.step -> store -> act; crash recovery
- estimate.py  estimated start times: the core run forward from the live state
- api.py       the REST API with bearer tokens; page.py the web page; server.py `flopwise cluster up`
- client.py    the HTTP client the CLI uses
"""
