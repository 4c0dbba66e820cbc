package penalty.connectors;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.types.Row;
import org.apache.kafka.clients.producer.ProducerRecord;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

/**
 * Writes Row(kind, key, value) of strings to the topic of its kind, so one Kafka sink (one
 * transactional producer per subtask) serves every output topic: one transaction per checkpoint
 * per subtask instead of one per topic, and a checkpoint's enforcement, notification and audit
 * records commit together. The key (user id) decides the partition so every record of one user
 * stays in order for downstream appliers. The record timestamp is left to the producer (wall
 * clock): event times can be days old and must not trip retention.
 */
public class KindTopicRowSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final HashMap<String, String> topics;

    /** @param kinds record kinds, and the topic of each at the same index */
    public KindTopicRowSerializer(String[] kinds, String[] topics) {
        if (kinds.length != topics.length) {
            throw new IllegalArgumentException(kinds.length + " kinds but " + topics.length + " topics");
        }
        this.topics = new HashMap<>();
        for (int i = 0; i < kinds.length; i++) {
            this.topics.put(kinds[i], topics[i]);
        }
    }

    public Map<String, String> topics() {
        return new HashMap<>(topics);
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row element, KafkaSinkContext context, Long timestamp) {
        Object kind = element.getField(0);
        String topic = topics.get(kind);
        if (topic == null) {
            throw new IllegalArgumentException("no topic for output kind " + kind + " (known: " + topics.keySet() + ")");
        }
        Object key = element.getField(1);
        Object value = element.getField(2);
        return new ProducerRecord<>(topic, null, null,
                key == null ? null : key.toString().getBytes(StandardCharsets.UTF_8),
                value == null ? null : value.toString().getBytes(StandardCharsets.UTF_8));
    }
}
