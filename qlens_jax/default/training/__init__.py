"""Training recipe for the bundled default model and dictionaries (`qlens_jax.default`).

Run `python -m qlens_jax.default.training --help`. Needs the text of Debian's
`r-cran-janeaustenr` (fetched with `apt-get download`, no R needed); the engine, the tests and
the demo only read the finished artifacts and never import this package.
"""
