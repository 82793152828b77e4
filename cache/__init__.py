"""sppdet.cache: the work folder and its stores; the only code that opens an HDF5 file."""
