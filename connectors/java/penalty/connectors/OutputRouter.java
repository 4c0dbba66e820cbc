package penalty.connectors;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.runtime.metrics.DescriptiveStatisticsHistogram;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Everything the Python operator produced for one bundle of input records, in one String[] (one
 * crossing from Python to the JVM instead of one per output record and one per counter increment), routed
 * in the JVM: output records to Row(kind, key, value) for the one Kafka sink (which picks the
 * topic by kind, see KindTopicRowSerializer), metric events to counters and the latency histogram.
 *
 * <p>The array is a sequence of triples (kind, a, b), written by jobs/operators.py:
 * <ul>
 *   <li>{@code enforcement | notification | audit | review | dlq, key, value}: an output record
 *       (the kinds of rules/records.py);
 *   <li>{@code count, name, n}: n increments ("" is one) of the counter {@code name} (see {@link #counter});
 *   <li>{@code latency, event_time_ms, ""}: a decision was made for an alert of that event time;
 *   <li>{@code gauge, group \t value \t name, v}: the gauge {@code name} in the metric group
 *       {@code group=value} reads v from now on (see {@link #gauge}).
 * </ul>
 */
public class OutputRouter extends ProcessFunction<String[], Row> {
    private static final long serialVersionUID = 1L;
    private static final int LATENCY_WINDOW = 2048;

    private final String[] rejectionReasons;
    private transient Map<String, Counter> counters;
    private transient Map<String, AtomicLong> gauges;
    private transient MetricGroup metrics;
    private transient DescriptiveStatisticsHistogram latency;

    /** @param rejectionReasons alert rejection reasons: their counters exist from the start. */
    public OutputRouter(String[] rejectionReasons) {
        this.rejectionReasons = rejectionReasons.clone();
    }

    @Override
    public void open(OpenContext openContext) {
        counters = new HashMap<>();
        gauges = new HashMap<>();
        metrics = getRuntimeContext().getMetricGroup();
        // Registered up front so dashboards and alert rules see them at zero.
        for (String name : new String[] {"alerts_in", "alerts_valid", "decisions_in", "decisions_rejected.invalid_decision",
                                         "decisions_rejected.invalid_signature", "decisions_rejected.too_large"}) {
            counter(name);
        }
        for (String reason : rejectionReasons) {
            counter("alerts_rejected." + reason);
        }
        latency = new DescriptiveStatisticsHistogram(LATENCY_WINDOW);
        metrics.histogram("decision_latency_ms", latency);
    }

    @Override
    public void processElement(String[] items, Context ctx, Collector<Row> out) {
        if (items.length % 3 != 0) {
            throw new IllegalArgumentException("output batch of " + items.length + " strings is not (kind, a, b) triples");
        }
        for (int i = 0; i < items.length; i += 3) {
            String kind = items[i];
            if ("count".equals(kind)) {
                String n = items[i + 2];
                counter(items[i + 1]).inc(n.isEmpty() ? 1L : Long.parseLong(n));
            } else if ("gauge".equals(kind)) {
                gauge(items[i + 1]).set(Long.parseLong(items[i + 2]));
            } else if ("latency".equals(kind)) {
                latency.update(Math.max(0L, System.currentTimeMillis() - Long.parseLong(items[i + 1])));
            } else {
                out.collect(Row.of(kind, items[i + 1], items[i + 2]));
            }
        }
    }

    /**
     * The counter of one event name, registered on first use:
     * "alerts_rejected.not_json" -> group reason=not_json, counter alerts_rejected;
     * "decisions_rejected.invalid_signature" -> group reason=invalid_signature, counter decisions_rejected;
     * "shadow.agree.r1" -> group shadow_rule=r1, counter agree;
     * "action.ban" -> group action=ban, counter decisions; "duplicate" -> counter duplicate.
     */
    Counter counter(String name) {
        Counter counter = counters.get(name);
        if (counter == null) {
            counter = register(name);
            counters.put(name, counter);
        }
        return counter;
    }

    /**
     * The value behind one gauge, registered on first use: "detector\tvision-nsfw-v5\tguard_tripped"
     * -> group detector=vision-nsfw-v5, gauge guard_tripped (Prometheus:
     * {@code flink_taskmanager_job_task_operator_detector_guard_tripped{detector="vision_nsfw_v5"}}: the
     * reporter turns every character but letters, digits, '_' and ':' of a label value into '_').
     * The value is split at the first and the last tab, so it may hold tabs itself.
     */
    AtomicLong gauge(String spec) {
        AtomicLong value = gauges.get(spec);
        if (value == null) {
            int first = spec.indexOf('\t');
            int last = spec.lastIndexOf('\t');
            if (first < 0 || first == last) {
                throw new IllegalArgumentException("gauge " + spec + " is not group\\tvalue\\tname");
            }
            AtomicLong registered = new AtomicLong();
            org.apache.flink.metrics.Gauge<Long> read = registered::get;
            metrics.addGroup(spec.substring(0, first), spec.substring(first + 1, last))
                    .gauge(spec.substring(last + 1), read);
            gauges.put(spec, registered);
            value = registered;
        }
        return value;
    }

    private Counter register(String name) {
        if (name.startsWith("decisions_rejected.")) {
            return metrics.addGroup("reason", name.substring("decisions_rejected.".length())).counter("decisions_rejected");
        }
        if (name.startsWith("alerts_rejected.")) {
            return metrics.addGroup("reason", name.substring("alerts_rejected.".length())).counter("alerts_rejected");
        }
        if (name.startsWith("shadow.")) {
            String[] parts = name.split("\\.", 3);
            if (parts.length == 3) {
                return metrics.addGroup("shadow_rule", parts[2]).counter(parts[1]);
            }
        }
        int dot = name.indexOf('.');
        if (dot > 0) {
            return metrics.addGroup(name.substring(0, dot), name.substring(dot + 1)).counter("decisions");
        }
        return metrics.counter(name);
    }
}
