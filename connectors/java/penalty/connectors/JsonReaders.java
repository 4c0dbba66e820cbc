package penalty.connectors;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.StreamReadConstraints;

/**
 * The JSON reader of the JVM's scans (user id, event time). The Python parser judges every
 * record, so these scans must read at least what it reads: Jackson's default limits (numbers of
 * at most 1,000 characters, 1,000 levels of nesting) are stricter than orjson's, and a scan that
 * gave up on an alert the Python parser accepts would key it under no user. A record is at most
 * 64 KiB when it gets here (the source cuts larger ones), so no limit below that is needed.
 */
final class JsonReaders {
    private static final int LIMIT = 1 << 20;

    private JsonReaders() {}

    static JsonFactory factory() {
        return JsonFactory.builder()
                .streamReadConstraints(StreamReadConstraints.builder()
                        .maxNumberLength(LIMIT)
                        .maxNestingDepth(LIMIT)
                        .maxStringLength(LIMIT)
                        .build())
                .build();
    }
}
