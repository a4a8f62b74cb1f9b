/**
 * Idleness around the job's Python decoders.
 *
 * <p>PyFlink's Python operators ({@code AbstractPythonFunctionOperator}, Flink 2.2) hold a watermark back
 * until the bundle in progress is finished, but pass a watermark status on at once. When an input goes idle
 * while a bundle holds its last watermark, the idle status overtakes the watermark, and Flink drops a
 * watermark that an operator emits while its output is idle. That watermark, the one that covered the
 * input's last records, never reaches the operators downstream: event-time operators and arrival mode's
 * catch-up gate then wait for the input's next record, which on a quiet topic may never come.
 *
 * <p>The job therefore strips the status before each decoder ({@link pricing.watermarks.StripIdleness})
 * and derives it again after it ({@link pricing.watermarks.IdleAfterSilence}), where the watermarks come
 * out in order.
 */
package pricing.watermarks;
