package pricing.watermarks;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;

/**
 * Passes records and watermarks on unchanged and drops every watermark status, so that the Python operator
 * after it never sees one (see the package documentation). Its output counts as active throughout; put
 * {@link IdleAfterSilence} after the Python operator to mark the stream idle again. Stateless: nothing to
 * restore, nothing lost on a crash.
 */
public final class StripIdleness<T> extends AbstractStreamOperator<T> implements OneInputStreamOperator<T, T> {

    private static final long serialVersionUID = 1L;

    @Override
    public void processElement(StreamRecord<T> element) {
        output.collect(element);
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        // dropped on purpose: IdleAfterSilence derives the status after the Python operator
    }
}
