/**
 * Idleness around the job's Python decoders.
 *
 * <p>PyFlink's Python operators ({@code AbstractPythonFunctionOperator}, Flink 2.2) hold records and
 * watermarks back until the bundle in progress is finished, but pass a watermark status on at once. When a
 * source goes idle while a bundle holds its last records and watermark, the idle status overtakes both:
 *
 * <ul>
 *   <li>Flink drops a watermark that an operator emits while its output is idle, so the watermark that
 *       covered the input's last records never reaches the operators downstream, and event-time operators
 *       and arrival mode's catch-up gate wait for the input's next record (on a quiet topic, for ever);
 *   <li>the records, emitted after the idle status, may reach the event-time operators behind a watermark
 *       that the other inputs advanced meanwhile, and those drop them without a trace.
 * </ul>
 *
 * <p>The job therefore turns the source's idle status into a marker record before each decoder
 * ({@link pricing.watermarks.IdleToMarker}), which travels through the Python operator in order with the
 * records, and turns the marker back into the idle status after it ({@link
 * pricing.watermarks.IdleFromMarker}): the status then follows every record and watermark that came
 * before it, as it does without a Python operator.
 */
package pricing.watermarks;
