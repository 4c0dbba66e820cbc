package penalty.connectors;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.types.Row;

/** Event time of a Row produced by {@link AlertRecordDeserializer}, read in the source. */
public class RowEventTimeAssigner implements SerializableTimestampAssigner<Row> {
    private static final long serialVersionUID = 1L;
    private final int field;

    public RowEventTimeAssigner(int field) {
        this.field = field;
    }

    @Override
    public long extractTimestamp(Row element, long recordTimestamp) {
        Object v = element.getField(field);
        return v == null ? AlertRecordDeserializer.NO_EVENT_TIME : (Long) v;
    }
}
