package penalty.connectors;

import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

import java.nio.ByteBuffer;

/**
 * A bundle (the layout of {@link ShardBundler}) back into raw records, in bundle order, shaped as
 * {@link AlertRecordDeserializer} shapes them: Row(topic, partition, offset, timestamp, payload,
 * size, event_time_ms). The topic is {@code topics[index]} of the record's topic index (null for
 * -1), so the indexes the detector guard stage writes (jobs/guard_operator.py) survive the next
 * {@link ShardBundler} given the same topic list. The event time field is the record's timestamp:
 * nothing behind this reads it (watermarks were assigned at the source).
 */
public class BundleSplitter extends ProcessFunction<byte[], Row> {
    private static final long serialVersionUID = 1L;

    private final String[] topics;

    public BundleSplitter(String[] topics) {
        this.topics = topics.clone();
    }

    @Override
    public void processElement(byte[] bundle, Context ctx, Collector<Row> out) {
        ByteBuffer buffer = ByteBuffer.wrap(bundle);
        int count = buffer.getInt();
        for (int i = 0; i < count; i++) {
            int topic = buffer.get();
            int partition = buffer.getInt();
            long offset = buffer.getLong();
            long timestamp = buffer.getLong();
            int size = buffer.getInt();
            int userLength = buffer.getInt();
            buffer.position(buffer.position() + userLength);
            byte[] payload = new byte[buffer.getInt()];
            buffer.get(payload);
            String name = topic >= 0 && topic < topics.length ? topics[topic] : null;
            out.collect(Row.of(name, partition, offset, timestamp, payload, size, timestamp));
        }
        if (buffer.hasRemaining()) {
            throw new IllegalArgumentException("bundle of " + bundle.length + " bytes holds " + count
                    + " records ending at byte " + buffer.position());
        }
    }
}
