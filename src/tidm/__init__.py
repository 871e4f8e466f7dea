"""TIDM: the Trusted Industrial Data Matrix.

Edge agents read equipment over OPC UA and MQTT, stamp provenance, and stream Arrow batches
through Kafka into stream jobs that land Parquet on S3, with every hop in a verifiable evidence log.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
