"""Survey data: schemas, synthetic surveys, ingest of FITS/HDF5/Parquet/HEALPix, Ray Data readers."""
