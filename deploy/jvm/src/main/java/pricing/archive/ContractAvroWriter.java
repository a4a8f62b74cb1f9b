package pricing.archive;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import org.apache.avro.Schema;
import org.apache.avro.file.CodecFactory;
import org.apache.avro.file.DataFileWriter;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.flink.api.common.serialization.BulkWriter;
import org.apache.flink.core.fs.FSDataOutputStream;
import org.apache.flink.table.data.RowData;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import pricing.decode.ContractDecoder;

/**
 * Writes one part file of the archive: an Avro object container file of the contract's current schema, a block per
 * flush. Rows carry the raw Kafka value; each is decoded (and resolved to the current schema) by
 * {@link ContractDecoder}, and one that does not decode is skipped and logged (the first few per file, then a count).
 */
public final class ContractAvroWriter implements BulkWriter.Factory<RowData> {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(ContractAvroWriter.class);
    private static final int LOGGED_PER_FILE = 5;

    private final ContractDecoder decoder;
    private final String schema;
    private final String codec;

    public ContractAvroWriter(String contract, String schema, List<String> writerSchemas, String codec) {
        this.decoder = new ContractDecoder(contract, schema, new ArrayList<>(writerSchemas));
        this.schema = schema;
        this.codec = codec;
    }

    @Override
    public BulkWriter<RowData> create(FSDataOutputStream out) throws IOException {
        Schema current = new Schema.Parser().parse(schema);
        DataFileWriter<GenericRecord> file = new DataFileWriter<>(new GenericDatumWriter<GenericRecord>(current));
        file.setCodec(codec.equals("null") ? CodecFactory.nullCodec() : CodecFactory.deflateCodec(6));
        file.create(current, out);
        return new Writer(file);
    }

    private final class Writer implements BulkWriter<RowData> {
        private final DataFileWriter<GenericRecord> file;
        private long skipped;

        Writer(DataFileWriter<GenericRecord> file) {
            this.file = file;
        }

        @Override
        public void addElement(RowData row) throws IOException {
            ContractDecoder.Result result = decoder.decode(row.isNullAt(0) ? null : row.getBinary(0));
            if (result.ok) {
                file.append(result.record);
            } else if (++skipped <= LOGGED_PER_FILE) {
                LOG.warn("archive of {}: a record is left out ({}: {})", decoder.contract(), result.kind, result.message);
            }
        }

        @Override
        public void flush() throws IOException {
            file.flush();
        }

        @Override
        public void finish() throws IOException {
            // Flush, never close: the sink owns the stream (it commits the file at the checkpoint).
            file.flush();
            if (skipped > LOGGED_PER_FILE) {
                LOG.warn("archive of {}: {} records left out of this file in all", decoder.contract(), skipped);
            }
        }
    }
}
