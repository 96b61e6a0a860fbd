"""The experiment loop around ``tfpipe train``: run tables, sweeps, the model zoo, tracking, exports."""
