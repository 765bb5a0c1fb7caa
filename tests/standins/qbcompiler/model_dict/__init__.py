"""Package path of the qbcompiler stand-in, as in Mobilint's imports."""
