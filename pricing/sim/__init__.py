"""A simulated market with a known ground truth, to feed, test and evaluate the pricing engine.

* ``scenario``: the validated knobs of a market, and the named scenarios;
* ``market``: the static ground truth, the true purchase probability, guardrails, the oracle;
* ``world``: market dynamics and shopper visits over time, and replaying a policy through them;
* ``history``: N days of logs as DataFrames or Avro files (``pricing simulate history``);
* ``live``: paced Kafka traffic with a closed loop on the engine's answers (``pricing simulate live``);
* ``policies`` / ``evaluate``: offline policy evaluation (``pricing evaluate``);
* ``cli``: ``register()`` attaches those commands to the ``pricing`` CLI.
"""
