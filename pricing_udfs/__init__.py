"""The runtime library shipped to Flink task managers: serde, policy and the Flink UDF adapters."""
