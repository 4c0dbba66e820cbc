package penalty.connectors;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.types.Row;
import org.apache.kafka.clients.producer.ProducerRecord;

import java.nio.charset.StandardCharsets;

/**
 * Writes a Row (key, value) of two strings to one topic. The key (user id) decides the partition
 * so every record of one user stays in order for downstream appliers. The record timestamp is
 * left to the producer (wall clock): event times can be days old and must not trip retention.
 */
public class KeyValueRowSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private final String topic;

    public KeyValueRowSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row element, KafkaSinkContext context, Long timestamp) {
        Object key = element.getField(0);
        Object value = element.getField(1);
        return new ProducerRecord<>(topic, null, null,
                key == null ? null : key.toString().getBytes(StandardCharsets.UTF_8),
                value == null ? null : value.toString().getBytes(StandardCharsets.UTF_8));
    }
}
