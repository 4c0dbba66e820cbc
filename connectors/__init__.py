"""The job's edges to Kafka: alert and decision schemas and parsers, the bundle layout, the source and
sink settings, and the Java helpers (deserializer, bundler, output router, serializer) in java/."""
