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
 * Packs raw records (see {@link AlertRecordDeserializer}) into bundles, one per subtask of the keyed
 * Python operator behind it (the subtask that owns the key group of the payload's user id), so that
 * operator is entered once per bundle instead of once per record. Emits Row(shard key, bundle
 * bytes): the shard key is a fixed string that Flink assigns to the first key group of that
 * subtask's range, so the bundle reaches the subtask that owns every user in it, and the Python
 * operator reads and writes each user's own keyed state (keyed by user id, as before) in the user's
 * own key group. Rescaling moves users with their key groups as it always did; the bundler is
 * built for the operator's parallelism, which the operator checks when it opens.
 *
 * <p>One bundle per subtask rather than per key group: with 128 key groups over 2 subtasks, a
 * bundle per key group held ~2-5 records at the rates a flush every 100 ms or checkpoint sees, and
 * the operator's fixed cost per bundle (the call into Python, its state writes' flush, the output
 * conversion) was paid that often.
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
    private final int parallelism;
    private final int maxRecords;
    private final long maxDelayMs;

    private transient int[] subtaskOfGroup;
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
     * @param parallelism the keyed operator's parallelism (its number of subtasks)
     * @param maxRecords flush when this many records are buffered (over all subtasks)
     * @param maxDelayMs flush at the latest this long after the first buffered record
     */
    public ShardBundler(String[] topics, int maxParallelism, int parallelism, int maxRecords, long maxDelayMs) {
        if (maxParallelism < 1 || parallelism < 1 || parallelism > maxParallelism || maxRecords < 1 || maxDelayMs < 0) {
            throw new IllegalArgumentException("bundles need 1 <= parallelism <= maxParallelism, maxRecords >= 1, "
                    + "maxDelayMs >= 0");
        }
        this.topics = topics.clone();
        this.maxParallelism = maxParallelism;
        this.parallelism = parallelism;
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
        String[] groupKeys = shardKeys(maxParallelism);
        subtaskOfGroup = new int[maxParallelism];
        for (int group = 0; group < maxParallelism; group++) {
            subtaskOfGroup[group] =
                    KeyGroupRangeAssignment.computeOperatorIndexForKeyGroup(maxParallelism, parallelism, group);
        }
        shardKeys = new String[parallelism];
        for (int subtask = 0; subtask < parallelism; subtask++) {
            shardKeys[subtask] = groupKeys[KeyGroupRangeAssignment
                    .computeKeyGroupRangeForOperatorIndex(maxParallelism, parallelism, subtask).getStartKeyGroup()];
        }
        buffers = new ByteBuffer[parallelism];
        counts = new int[parallelism];
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
        int subtask = subtaskOfGroup[keyGroupOf(user, maxParallelism)];
        ByteBuffer buffer = ensure(subtask, HEADER_BYTES + userBytes.length + payload.length);
        buffer.put((byte) topicIndex((String) raw.getField(0)));
        buffer.putInt((Integer) raw.getField(1));
        buffer.putLong((Long) raw.getField(2));
        buffer.putLong((Long) raw.getField(3));
        buffer.putInt((Integer) raw.getField(5));
        buffer.putInt(userBytes.length).put(userBytes);
        buffer.putInt(payload.length).put(payload);
        counts[subtask]++;
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

    private ByteBuffer ensure(int subtask, int more) {
        ByteBuffer buffer = buffers[subtask];
        if (buffer == null) {
            buffer = ByteBuffer.allocate(Math.max(4096, 4 + more));
            buffer.putInt(0);  // the count, written at flush
            buffers[subtask] = buffer;
        } else if (buffer.remaining() < more) {
            ByteBuffer bigger = ByteBuffer.allocate(Math.max(buffer.capacity() * 2, buffer.position() + more));
            buffer.flip();
            bigger.put(buffer);
            buffers[subtask] = bigger;
            buffer = bigger;
        }
        return buffer;
    }

    /** Emit every non-empty bundle, then the watermark held meanwhile. */
    private void flush() {
        if (buffered > 0) {
            for (int subtask = 0; subtask < counts.length; subtask++) {
                if (counts[subtask] == 0) {
                    continue;
                }
                ByteBuffer buffer = buffers[subtask];
                buffer.putInt(0, counts[subtask]);
                byte[] bundle = Arrays.copyOf(buffer.array(), buffer.position());
                output.collect(new StreamRecord<>(Row.of(shardKeys[subtask], bundle)));
                bundleRecords.update(counts[subtask]);
                bundlesOut.inc();
                counts[subtask] = 0;
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
