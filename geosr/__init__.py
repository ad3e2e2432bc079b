"""geosr: georeferenced super-resolution of GeoTIFF rasters.

Importing geosr imports neither torch nor dask: heavy libraries are imported
inside the functions that need them.
"""

__version__ = "0.1.0"
