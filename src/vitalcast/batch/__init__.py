"""Population-scale batch scoring on Apache Spark (``vitalcast score-batch``).

``source`` reads stays from the store (SQLAlchemy, driver side); ``spark`` scores them in
``mapInPandas`` partitions with the same feature function and verified model as the online
path, so a batch score equals the score the API would give for that stay at that time.
"""
