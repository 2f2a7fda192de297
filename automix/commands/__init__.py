"""CLI sub-commands: one module each, exposing `add_parser(subparsers)`.

Building the parser imports every command module, so each command imports the library it
runs inside its handler (marked `# lazy: CLI start-up`): `automix --help` takes 0.25 s, while
importing what `search`, `export` and `report` need (torch, transformers, Ray, MLflow, plotly)
takes about 8 s on 2 cores.
"""
