"""`redweb measure`: workloads run through a Mininet lab, results as JSON and CSV, plots as PNG.

What the measurements are for: turning the behaviours of CENSOR-MODELS.md into numbers a reader can check on
their own machine (goodput of a throttled download, the residual window, the blocked share of fully encrypted
connections, which evasions get through), measured from the client's side with real programs, never read from
the censor's own log.

One module per concern:

    stats       confidence intervals and goodput summaries (pure functions)
    results     the `Measurement` record and its JSON + CSV files
    progress    a plain-text progress bar on stderr for long runs
    profiles    temporary profiles that include a bundled one and override one thing (lists, residual seconds)
    payloads    GF-1 (Ex1-Ex5) reference predicates and payload builders for the FET measurement
    published   what CENSOR-MODELS.md says each strategy does against each profile (must / must NOT evade)
    hostprocs   background programs inside lab hosts (a TCP sink), started and stopped by their pid
    sampler     in-host client: body bytes per interval of one or more concurrent downloads (goodput)
    fetclient   in-host client and sink: TCP connections with a chosen first payload (GF-1, GF-2)
    workloads   fetches per name (DNS, HTTP, HTTPS, QUIC, bulk, or a strategy via `redweb probe`)
    goodput     throttled vs control goodput over time (T21-4)
    residual    connection outcomes over time around a residual window (G-4, GF-3)
    fet         the GF-2 blocked fraction with its 95 % CI, and the exemptions never blocked
    matrix      evasion strategies x profiles, observed next to published
    reproduce   the four reproductions and their summary table
    plots       matplotlib (Agg) figures
    cli         `redweb measure ...` arguments and entry point

The in-host programs (`sampler`, `fetclient`) run as `python -m dpi.measure.NAME` inside Mininet hosts, so this
package must stay cheap to import: nothing here imports matplotlib or Mininet at module level.
"""
