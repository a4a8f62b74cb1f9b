package pricing.watermarks;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.types.Row;

import java.time.Instant;

/**
 * Before a Python decoder (see the package documentation): passes the Kafka reader's rows ({@code value}
 * BYTES, {@code topic} STRING, {@code partition} INT, {@code offset} BIGINT, {@code ts} TIMESTAMP_LTZ) and its
 * watermarks on unchanged, and replaces each idle status by a marker row: offset {@link #MARKER_OFFSET} (no
 * Kafka record has a negative offset), empty value and topic, stamped with the last row's time. The active
 * status is dropped: a source turns active with a record, which {@link IdleFromMarker} sees. Stateless:
 * nothing to restore; after a restart the source announces idleness anew.
 */
public final class IdleToMarker extends AbstractStreamOperator<Row> implements OneInputStreamOperator<Row, Row> {

    private static final long serialVersionUID = 1L;
    /** The offset of a marker row. */
    public static final long MARKER_OFFSET = -1L;

    private transient long lastTimestamp;

    @Override
    public void processElement(StreamRecord<Row> element) {
        if (element.hasTimestamp()) {
            lastTimestamp = element.getTimestamp();
        }
        output.collect(element);
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        if (!status.isIdle()) {
            return;
        }
        Row marker = Row.withNames();
        marker.setField("value", new byte[0]);
        marker.setField("topic", "");
        marker.setField("partition", -1);
        marker.setField("offset", MARKER_OFFSET);
        marker.setField("ts", Instant.ofEpochMilli(lastTimestamp));
        output.collect(new StreamRecord<>(marker, lastTimestamp));
    }
}
