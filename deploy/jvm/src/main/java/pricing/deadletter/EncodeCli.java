package pricing.deadletter;

import java.io.DataInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;

import pricing.decode.Batches;

/**
 * {@link EncodeDeadLetter} as a process, for the byte-equality test against the Python encoder
 * ({@code tests/pricing_udfs/test_dead_letter_encoder.py}).
 *
 * <pre>java -cp pricing-features.jar:&lt;flink lib&gt;/* pricing.deadletter.EncodeCli &lt;dead_letter.avsc&gt; &lt;max raw bytes&gt; &lt;digest&gt;</pre>
 *
 * <p>Reads batches from standard input: a big-endian int32 count, then per dead letter the topic, the raw bytes, the
 * error kind and the message (each a big-endian int32 length, -1 for null, and the bytes, strings in UTF-8), then
 * the partition (int32), the offset, the record time and the time of writing (int64 each). After each batch it
 * writes one line per dead letter: the framed bytes in hex.
 */
public final class EncodeCli {
    private EncodeCli() {}

    public static void main(String[] args) throws IOException {
        if (args.length != 3) {
            System.err.println("usage: EncodeCli <dead_letter.avsc> <max raw bytes> <digest: true|false>");
            System.exit(2);
        }
        EncodeDeadLetter encoder = new EncodeDeadLetter(Files.readString(Paths.get(args[0])), Integer.parseInt(args[1]),
                Boolean.parseBoolean(args[2]));
        Batches.serve(in -> {
            String topic = text(in);
            byte[] raw = Batches.bytes(in);
            String kind = text(in);
            String message = text(in);
            int partition = in.readInt();
            long offset = in.readLong();
            long recordMs = in.readLong();
            long nowMs = in.readLong();
            byte[] framed = encoder.encode(topic, partition, offset, raw, kind, message, recordMs, nowMs);
            StringBuilder hex = new StringBuilder();
            for (byte b : framed) {
                hex.append(String.format("%02x", b & 0xff));
            }
            return hex.toString();
        });
    }

    private static String text(DataInputStream in) throws IOException {
        byte[] raw = Batches.bytes(in);
        return raw == null ? null : new String(raw, StandardCharsets.UTF_8);
    }
}
