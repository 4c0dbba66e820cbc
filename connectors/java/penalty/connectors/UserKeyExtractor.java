package penalty.connectors;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.types.Row;

/**
 * Raw record row (see AlertRecordDeserializer) -> Row(user_id, raw row), in the JVM, so the
 * job can key alerts and moderator decisions by user without a Python operator in front of
 * the keyed one: the shape PyFlink's keyed operators read (key, value).
 *
 * <p>The key is the last top-level string "user_id" of the payload (as the Python parser
 * reads duplicates), or "" when there is none: such records are rejected by the Python parser
 * anyway, and "" is never a valid user id. The Python side checks that a valid record's user
 * id equals its key.
 */
public class UserKeyExtractor implements MapFunction<Row, Row> {
    private static final long serialVersionUID = 1L;
    public static final String NO_USER = "";
    private static final int PAYLOAD_FIELD = 4;

    private transient JsonFactory jsonFactory;

    @Override
    public Row map(Row raw) {
        return Row.of(userOf((byte[]) raw.getField(PAYLOAD_FIELD)), raw);
    }

    String userOf(byte[] payload) {
        if (payload == null || payload.length == 0) {
            return NO_USER;
        }
        if (jsonFactory == null) {
            jsonFactory = JsonReaders.factory();
        }
        String user = NO_USER;
        try (JsonParser p = jsonFactory.createParser(payload)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return NO_USER;
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.getCurrentName();
                JsonToken v = p.nextToken();
                if ("user_id".equals(name) && v == JsonToken.VALUE_STRING) {
                    user = p.getText();
                } else {
                    p.skipChildren();
                }
            }
        } catch (Exception e) {
            // Malformed JSON: the Python parser names the problem; key what was read so far.
        }
        return user;
    }
}
