"""Everything that reads the cache and writes for a person: the run's stdout `summary`, `audit`,
`report` (with its transcript `browser`), `export`, and the verbatim `hit_listing`. Nothing here
imports execution; every number comes from `results_frame` through `stats.cells`."""
