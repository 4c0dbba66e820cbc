package penalty.connectors;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.RowTypeInfo;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;

import java.util.Arrays;

/**
 * Turns every Kafka record of the alerts topic into a Row the Python parser can judge:
 * (topic, partition, offset, payload, payload_size, event_time_ms).
 *
 * <p>It never throws on content: validation happens in Python, where rejections become DLQ
 * records. Oversized payloads are cut to {@code maxRawBytes} here so they are never handed to
 * Python (or parsed) whole. {@code event_time_ms} is read with a streaming scan so the source
 * can emit per-partition watermarks; records without a usable event time get Long.MIN_VALUE,
 * which never advances a watermark (a malformed or far-future record must not make valid alerts
 * late or fire strike-expiry timers early).
 */
public class AlertRecordDeserializer implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    public static final long NO_EVENT_TIME = Long.MIN_VALUE;

    private final int maxPayloadBytes;
    private final int maxRawBytes;
    private final long maxFutureSkewMs;
    private transient JsonFactory jsonFactory;

    public AlertRecordDeserializer(int maxPayloadBytes, int maxRawBytes, long maxFutureSkewMs) {
        this.maxPayloadBytes = maxPayloadBytes;
        this.maxRawBytes = maxRawBytes;
        this.maxFutureSkewMs = maxFutureSkewMs;
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        byte[] value = record.value();
        int size = value == null ? -1 : value.length;
        long eventTimeMs = NO_EVENT_TIME;
        byte[] payload = value;
        if (value != null && value.length > maxPayloadBytes) {
            payload = Arrays.copyOf(value, Math.min(maxRawBytes, value.length));
        } else if (value != null) {
            eventTimeMs = scanEventTime(value);
            long producedMs = record.timestamp();
            if (eventTimeMs != NO_EVENT_TIME && producedMs >= 0
                    && eventTimeMs > producedMs + maxFutureSkewMs) {
                eventTimeMs = NO_EVENT_TIME;
            }
        }
        out.collect(Row.of(record.topic(), record.partition(), record.offset(), record.timestamp(),
                payload == null ? new byte[0] : payload, size, eventTimeMs));
    }

    private long scanEventTime(byte[] value) {
        if (jsonFactory == null) {
            jsonFactory = JsonReaders.factory();
        }
        try (JsonParser p = jsonFactory.createParser(value)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return NO_EVENT_TIME;
            }
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.getCurrentName();
                JsonToken v = p.nextToken();
                if ("event_time_ms".equals(name)) {
                    return v == JsonToken.VALUE_NUMBER_INT ? p.getLongValue() : NO_EVENT_TIME;
                }
                p.skipChildren();
            }
        } catch (Exception e) {
            // Malformed JSON: the Python parser names the problem; no event time here.
        }
        return NO_EVENT_TIME;
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return new RowTypeInfo(
                BasicTypeInfo.STRING_TYPE_INFO,
                BasicTypeInfo.INT_TYPE_INFO,
                BasicTypeInfo.LONG_TYPE_INFO,
                BasicTypeInfo.LONG_TYPE_INFO,
                PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
                BasicTypeInfo.INT_TYPE_INFO,
                BasicTypeInfo.LONG_TYPE_INFO);
    }
}
