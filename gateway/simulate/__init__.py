"""`acs-media-gateway simulate`: simulated ACS calls against any gateway, as a load test.

    acs-media-gateway simulate ws://127.0.0.1:8080/ --calls 100 --duration 30 --ramp 5

Modules: `options` (what a run is asked to do), `tagging` (the echo tag, fast tagged audio frames),
`script` (what each caller says), `sim_call` (one call: its frames, what it reads, its result),
`runner` (the engine: one process, one ticker), `workers` (several processes, progress), `results`
(what each call and the simulator measured), `report` (totals, table, JSON), `checks` (thresholds,
the default checks), `plot` (a timeline PNG), `recording` (save and replay a call), `cli` (the
subcommand), `fake_model` (`acs-media-gateway fake-model`: the fake realtime model as a process,
for load-testing a bridged gateway). Nothing is imported here, so `acs-media-gateway serve` does
not pay for it. The client side of the wire is `gateway.acs.client`; the library for tests is
`gateway.testing`.
"""
