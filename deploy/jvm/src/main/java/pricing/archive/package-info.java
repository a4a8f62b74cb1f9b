/**
 * The archive's file format: Avro object container files of one contract (see {@link pricing.archive.ContractAvroFormatFactory}).
 */
package pricing.archive;
