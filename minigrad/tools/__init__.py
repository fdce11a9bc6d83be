"""Teaching and reporting tools that sit beside the engine, not in it.

`explain` draws how each lowering turns a small convolution into GEMMs (`minigrad explain`);
`plot` draws benchmark results and training logs (`minigrad plot`). The engine never imports
this package; the `minigrad` command does.
"""
