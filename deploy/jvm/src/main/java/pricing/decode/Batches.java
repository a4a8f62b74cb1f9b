package pricing.decode;

import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The batch protocol of the project's JVM test processes ({@link DecodeCli}, {@code pricing.deadletter.EncodeCli}):
 * standard input holds batches, each a big-endian int32 count and that many records; after reading a whole batch
 * the process writes one line per record to standard output and flushes, so a client that writes a batch and then
 * reads its lines never blocks on a full pipe.
 */
public final class Batches {
    private Batches() {}

    /** Reads one record from the stream and returns its output line. */
    public interface Handler {
        String line(DataInputStream in) throws IOException;
    }

    public static void serve(Handler handler) throws IOException {
        DataInputStream in = new DataInputStream(System.in);
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out, 1 << 16), false, StandardCharsets.UTF_8);
        while (true) {
            int count;
            try {
                count = in.readInt();
            } catch (EOFException e) {
                break;
            }
            List<String> lines = new ArrayList<>(count);
            for (int i = 0; i < count; i++) {
                lines.add(handler.line(in));
            }
            for (String line : lines) {
                out.println(line);
            }
            out.flush();
        }
        out.flush();
    }

    /** A big-endian int32 length (-1: null) and that many bytes. */
    public static byte[] bytes(DataInputStream in) throws IOException {
        int length = in.readInt();
        if (length < 0) {
            return null;
        }
        byte[] out = new byte[length];
        in.readFully(out);
        return out;
    }
}
