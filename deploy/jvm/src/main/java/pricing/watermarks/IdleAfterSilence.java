package pricing.watermarks;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;

import java.util.concurrent.ScheduledFuture;

/**
 * Marks its output idle once neither a record nor a watermark has come in for {@code silenceMs} of
 * processing time, and active again (before passing it on) at the next record or watermark. Records and
 * watermarks pass unchanged and in order, so a watermark is never emitted while the output is idle.
 *
 * <p>It stands after a Python operator whose input went through {@link StripIdleness}; choose
 * {@code silenceMs} as the source's idle timeout plus the Python bundle time (how long the operator may
 * hold a record back), so the stream is not declared idle while records are still inside the operator.
 * Incoming watermark statuses are ignored. Its only state is the clock of the last input, which starts
 * afresh (as active) after a restore.
 */
public final class IdleAfterSilence<T> extends AbstractStreamOperator<T> implements OneInputStreamOperator<T, T> {

    private static final long serialVersionUID = 1L;

    private final long silenceMs;
    private transient long lastInput;
    private transient boolean idle;
    private transient ScheduledFuture<?> check;

    public IdleAfterSilence(long silenceMs) {
        if (silenceMs <= 0) {
            throw new IllegalArgumentException("silenceMs must be positive, got " + silenceMs);
        }
        this.silenceMs = silenceMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        lastInput = getProcessingTimeService().getCurrentProcessingTime();
        long period = Math.max(10L, Math.min(200L, silenceMs / 5));
        check = getProcessingTimeService().scheduleWithFixedDelay(this::checkSilence, period, period);
    }

    private void checkSilence(long now) {
        if (!idle && now - lastInput >= silenceMs) {
            idle = true;
            output.emitWatermarkStatus(WatermarkStatus.IDLE);
        }
    }

    private void input() {
        lastInput = getProcessingTimeService().getCurrentProcessingTime();
        if (idle) {
            idle = false;
            output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        }
    }

    @Override
    public void processElement(StreamRecord<T> element) {
        input();
        output.collect(element);
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        input();
        super.processWatermark(mark);
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        // ignored: the status is derived here from the input's silence
    }

    @Override
    public void close() throws Exception {
        if (check != null) {
            check.cancel(false);
        }
        super.close();
    }
}
