package pricing.decode;

import java.io.IOException;
import java.nio.ByteBuffer;

import org.apache.avro.AvroTypeException;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.Decoder;
import org.apache.avro.util.Utf8;

/**
 * Avro's {@link BinaryDecoder} with the two checks it leaves out, so that a malformed value is an error instead of
 * a quietly different value: an {@code int} (and an enum or union index, which are ints on the wire) whose varint
 * does not fit 32 bits (Avro's reader keeps the low 32 bits), and a {@code boolean} byte other than 0 or 1 (Avro's
 * reader takes any byte but 1 as false). {@code pricing_udfs.serde.decode} applies the same two rules.
 */
final class StrictDecoder extends Decoder {
    private BinaryDecoder in;
    private final byte[] one = new byte[1];

    StrictDecoder on(BinaryDecoder decoder) {
        in = decoder;
        return this;
    }

    private int int32() throws IOException {
        long value = in.readLong();
        if (value < Integer.MIN_VALUE || value > Integer.MAX_VALUE) {
            throw new AvroTypeException("an int of " + value + " does not fit 32 bits");
        }
        return (int) value;
    }

    @Override
    public void readNull() throws IOException {
        in.readNull();
    }

    @Override
    public boolean readBoolean() throws IOException {
        in.readFixed(one);
        if (one[0] != 0 && one[0] != 1) {
            throw new AvroTypeException("a boolean byte of " + (one[0] & 0xff) + ", not 0 or 1");
        }
        return one[0] == 1;
    }

    @Override
    public int readInt() throws IOException {
        return int32();
    }

    @Override
    public long readLong() throws IOException {
        return in.readLong();
    }

    @Override
    public float readFloat() throws IOException {
        return in.readFloat();
    }

    @Override
    public double readDouble() throws IOException {
        return in.readDouble();
    }

    @Override
    public Utf8 readString(Utf8 old) throws IOException {
        return in.readString(old);
    }

    @Override
    public String readString() throws IOException {
        return in.readString();
    }

    @Override
    public void skipString() throws IOException {
        in.skipString();
    }

    @Override
    public ByteBuffer readBytes(ByteBuffer old) throws IOException {
        return in.readBytes(old);
    }

    @Override
    public void skipBytes() throws IOException {
        in.skipBytes();
    }

    @Override
    public void readFixed(byte[] bytes, int start, int length) throws IOException {
        in.readFixed(bytes, start, length);
    }

    @Override
    public void skipFixed(int length) throws IOException {
        in.skipFixed(length);
    }

    @Override
    public int readEnum() throws IOException {
        return int32();
    }

    @Override
    public long readArrayStart() throws IOException {
        return in.readArrayStart();
    }

    @Override
    public long arrayNext() throws IOException {
        return in.arrayNext();
    }

    @Override
    public long skipArray() throws IOException {
        return in.skipArray();
    }

    @Override
    public long readMapStart() throws IOException {
        return in.readMapStart();
    }

    @Override
    public long mapNext() throws IOException {
        return in.mapNext();
    }

    @Override
    public long skipMap() throws IOException {
        return in.skipMap();
    }

    @Override
    public int readIndex() throws IOException {
        return int32();
    }
}
