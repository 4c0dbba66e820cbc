package penalty.bench;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

import java.nio.charset.StandardCharsets;

/**
 * The throughput bench's JVM floor (devtools/bench/floor_job.py): stands in for the penalty operator
 * behind the key-by, decides nothing and keeps no state. Row(user_id, raw record) -> the
 * operator's output array (see OutputRouter): one input counter and the payload as one audit
 * record keyed by the user, so that the source, the exchange, the router and the sink do what
 * they do for the real job, and the difference is the penalty operator's work.
 */
public class PassThrough implements MapFunction<Row, String[]> {
    private static final long serialVersionUID = 1L;
    private static final int PAYLOAD_FIELD = 4;

    @Override
    public String[] map(Row keyed) {
        Row raw = (Row) keyed.getField(1);
        String payload = new String((byte[]) raw.getField(PAYLOAD_FIELD), StandardCharsets.UTF_8);
        return new String[] {"count", "alerts_in", "", "audit", (String) keyed.getField(0), payload};
    }
}
