package penalty.connectors;

import org.apache.flink.metrics.Counter;
import org.apache.flink.runtime.metrics.DescriptiveStatisticsHistogram;
import org.apache.flink.runtime.state.KeyGroupRangeAssignment;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.types.Row;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Packs raw records (see {@link AlertRecordDeserializer}) into bundles, one per key group of the
 * payload's user id, so the keyed Python operator behind it is entered once per bundle instead of
 * once per record. Emits Row(shard key, bundle bytes): the shard key is a fixed string that Flink
 * assigns to the same key group as every user in the bundle, so the Python operator can read and
 * write each user's own keyed state (keyed by user id, as before) inside that key group, and
 * rescaling moves users with their key groups as it always did.
 *
 * <p>A bundle never spans a checkpoint and needs no state: everything buffered is emitted in
 * {@link #prepareSnapshotPreBarrier}, ahead of the barrier. It is flushed when the buffered records
 * reach {@code maxRecords}, {@code maxDelayMs} after its first record, before a watermark status
 * change and at the end of input. Watermarks are held while records are buffered and emitted right
 * after the flush that empties the buffer, so no record is ever behind a watermark it preceded.
 *
 * <p>Bundle layout (big-endian): int count, then per record: byte topic index (into the topics
 * given at construction, -1 if none matches), int partition, long offset, long timestamp, int size
 * (the original payload size; -1 for a null value), int user id length + UTF-8 user id (as the
 * JVM's key extractor read it, "" if none), int payload length + payload bytes.
 */
public class ShardBundler extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, BoundedOneInput {
    private static final long serialVersionUID = 1L;
    private static final int HEADER_BYTES = 1 + 4 + 8 + 8 + 4 + 4 + 4;

    private final String[] topics;
    private final int maxParallelism;
    private final int maxRecords;
    private final long maxDelayMs;

    private transient String[] shardKeys;
    private transient ByteBuffer[] buffers;
    private transient int[] counts;
    private transient int buffered;
    private transient boolean flushScheduled;
    private transient Watermark heldWatermark;
    private transient UserKeyExtractor keys;
    private transient Counter bundlesOut;
    private transient DescriptiveStatisticsHistogram bundleRecords;

    /**
     * @param topics the input topics, in the order the Python side indexes them
     * @param maxParallelism the keyed operator's max parallelism (its number of key groups)
     * @param maxRecords flush when this many records are buffered (over all key groups)
     * @param maxDelayMs flush at the latest this long after the first buffered record
     */
    public ShardBundler(String[] topics, int maxParallelism, int maxRecords, long maxDelayMs) {
        if (maxParallelism < 1 || maxRecords < 1 || maxDelayMs < 0) {
            throw new IllegalArgumentException("bundles need maxParallelism >= 1, maxRecords >= 1, maxDelayMs >= 0");
        }
        this.topics = topics.clone();
        this.maxParallelism = maxParallelism;
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
    }

    /** The key group Flink assigns to records keyed by {@code key} (a Row(key), as PyFlink keys). */
    public static int keyGroupOf(String key, int maxParallelism) {
        return KeyGroupRangeAssignment.assignToKeyGroup(Row.of(key), maxParallelism);
    }

    /**
     * One shard key per key group: the first strings "\u0000shard-N" (N = 0, 1, ...) that land in
     * each group. Deterministic, so every subtask and every restart agrees. No user id can equal
     * one (they are never stored under: state and timers live under the users' own keys).
     */
    public static String[] shardKeys(int maxParallelism) {
        String[] keys = new String[maxParallelism];
        int found = 0;
        for (long n = 0; found < maxParallelism; n++) {
            String key = "\u0000shard-" + n;
            int group = keyGroupOf(key, maxParallelism);
            if (keys[group] == null) {
                keys[group] = key;
                found++;
            }
        }
        return keys;
    }

    @Override
    public void open() throws Exception {
        super.open();
        shardKeys = shardKeys(maxParallelism);
        buffers = new ByteBuffer[maxParallelism];
        counts = new int[maxParallelism];
        keys = new UserKeyExtractor();
        bundlesOut = getMetricGroup().counter("bundles");
        bundleRecords = new DescriptiveStatisticsHistogram(1024);
        getMetricGroup().histogram("bundle_records", bundleRecords);
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Row raw = element.getValue();
        byte[] payload = (byte[]) raw.getField(4);
        String user = keys.userOf(payload);
        byte[] userBytes = user.getBytes(StandardCharsets.UTF_8);
        int group = keyGroupOf(user, maxParallelism);
        ByteBuffer buffer = ensure(group, HEADER_BYTES + userBytes.length + payload.length);
        buffer.put((byte) topicIndex((String) raw.getField(0)));
        buffer.putInt((Integer) raw.getField(1));
        buffer.putLong((Long) raw.getField(2));
        buffer.putLong((Long) raw.getField(3));
        buffer.putInt((Integer) raw.getField(5));
        buffer.putInt(userBytes.length).put(userBytes);
        buffer.putInt(payload.length).put(payload);
        counts[group]++;
        buffered++;
        if (buffered >= maxRecords) {
            flush();
        } else if (!flushScheduled) {
            flushScheduled = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, time -> onFlushTimer());
        }
    }

    private void onFlushTimer() {
        flushScheduled = false;
        flush();
    }

    private int topicIndex(String topic) {
        for (int i = 0; i < topics.length; i++) {
            if (topics[i].equals(topic)) {
                return i;
            }
        }
        return -1;
    }

    private ByteBuffer ensure(int group, int more) {
        ByteBuffer buffer = buffers[group];
        if (buffer == null) {
            buffer = ByteBuffer.allocate(Math.max(4096, 4 + more));
            buffer.putInt(0);  // the count, written at flush
            buffers[group] = buffer;
        } else if (buffer.remaining() < more) {
            ByteBuffer bigger = ByteBuffer.allocate(Math.max(buffer.capacity() * 2, buffer.position() + more));
            buffer.flip();
            bigger.put(buffer);
            buffers[group] = bigger;
            buffer = bigger;
        }
        return buffer;
    }

    /** Emit every non-empty bundle, then the watermark held meanwhile. */
    private void flush() {
        if (buffered > 0) {
            for (int group = 0; group < counts.length; group++) {
                if (counts[group] == 0) {
                    continue;
                }
                ByteBuffer buffer = buffers[group];
                buffer.putInt(0, counts[group]);
                byte[] bundle = Arrays.copyOf(buffer.array(), buffer.position());
                output.collect(new StreamRecord<>(Row.of(shardKeys[group], bundle)));
                bundleRecords.update(counts[group]);
                bundlesOut.inc();
                counts[group] = 0;
                buffer.clear();
                buffer.putInt(0);
            }
            buffered = 0;
        }
        if (heldWatermark != null) {
            Watermark mark = heldWatermark;
            heldWatermark = null;
            output.emitWatermark(mark);
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        if (buffered == 0) {
            heldWatermark = null;
            super.processWatermark(mark);
        } else {
            heldWatermark = mark;  // emitted behind the records buffered before it
        }
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) throws Exception {
        flush();
        super.processWatermarkStatus(status);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush();  // nothing buffered crosses a checkpoint: the bundler keeps no state
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput() throws Exception {
        flush();
    }

    @Override
    public void finish() throws Exception {
        flush();
        super.finish();
    }
}
