package pricing.watermarks;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.types.Row;

/**
 * After a Python decoder (see the package documentation): a row whose field {@code offsetField} holds {@link
 * IdleToMarker#MARKER_OFFSET} is a marker, which it drops and turns into the idle status; any other row turns
 * the stream active again (before it goes on). A watermark that the Python operator releases after the
 * marker goes on between an active and an idle status, so it is neither dropped nor does it hold the
 * downstream watermark back while the source stays idle. Incoming statuses are ignored (there are none
 * after {@link IdleToMarker}). State: the current status, active after a restore, as the stream starts.
 */
public final class IdleFromMarker extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final int offsetField;
    private transient boolean idle;

    public IdleFromMarker(int offsetField) {
        if (offsetField < 0) {
            throw new IllegalArgumentException("offsetField must be a field position, got " + offsetField);
        }
        this.offsetField = offsetField;
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Object offset = element.getValue().getField(offsetField);
        if (offset instanceof Number && ((Number) offset).longValue() == IdleToMarker.MARKER_OFFSET) {
            if (!idle) {
                idle = true;
                output.emitWatermarkStatus(WatermarkStatus.IDLE);
            }
            return;
        }
        if (idle) {
            idle = false;
            output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        }
        output.collect(element);
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (!idle) {
            super.processWatermark(mark);
            return;
        }
        output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        super.processWatermark(mark);
        output.emitWatermarkStatus(WatermarkStatus.IDLE);
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        // ignored: the status comes from the markers
    }
}
