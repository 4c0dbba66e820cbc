package penalty.connectors;

import java.lang.reflect.Field;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.time.Duration;
import java.util.Map;
import java.util.function.Supplier;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.connector.base.source.reader.SourceReaderBase;
import org.apache.flink.connector.base.source.reader.fetcher.SplitFetcherManager;
import org.apache.flink.connector.base.source.reader.splitreader.SplitReader;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.KafkaSourceEnumState;
import org.apache.flink.connector.kafka.source.reader.KafkaPartitionSplitReader;
import org.apache.flink.connector.kafka.source.split.KafkaPartitionSplit;
import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.internals.ConsumerDelegate;
import org.apache.kafka.common.errors.InterruptException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The job's KafkaSource, unchanged (same splits, enumerator, serializers and so the same
 * savepoint state), except that its consumer sleeps {@code backoffMs} after a fetch that
 * brought nothing instead of sending the next one at once.
 *
 * <p>Why: a Kafka broker parks an empty fetch for fetch.max.wait.ms, so an idle consumer costs
 * nothing. A broker that answers at once (the local one: noida-db ignores the wait) turns
 * the consumer's poll loop into a busy loop: with the job idle, each source's fetcher thread
 * burnt half a core and the broker another quarter per consumer, on a 2-core box where the
 * decisions need every cycle. After an empty fetch the consumer here asks again after at most
 * {@code backoffMs}, so a record waits at most that much longer; against a real broker, which
 * holds the fetch itself, the backoff only adds that bound.
 *
 * <p>How: the split reader's consumer is created by Flink's KafkaPartitionSplitReader and is
 * not configurable from outside, so the reader factory is wrapped and the consumer's internal
 * delegate (the classic consumer) is put behind a proxy whose poll(timeout) is a loop of
 * poll(0) and sleeps. Everything else goes to the delegate untouched (wakeup() included: the
 * next poll(0) throws it). Should a later connector or client version move those fields, the
 * source logs a warning and runs as plain KafkaSource.
 */
public class IdleBackoffKafkaSource<OUT>
        implements Source<OUT, KafkaPartitionSplit, KafkaSourceEnumState>, ResultTypeQueryable<OUT> {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(IdleBackoffKafkaSource.class);

    private final KafkaSource<OUT> source;
    private final long backoffMs;

    public IdleBackoffKafkaSource(KafkaSource<OUT> source, long backoffMs) {
        this.source = source;
        this.backoffMs = backoffMs;
    }

    @Override
    public Boundedness getBoundedness() {
        return source.getBoundedness();
    }

    @Override
    public SourceReader<OUT, KafkaPartitionSplit> createReader(SourceReaderContext context) throws Exception {
        SourceReader<OUT, KafkaPartitionSplit> reader = source.createReader(context);
        if (backoffMs > 0) {
            try {
                wrapReaderFactory(reader);
            } catch (ReflectiveOperationException | ClassCastException | IllegalArgumentException e) {
                LOG.warn("idle fetch backoff not applied (a plain KafkaSource reader runs): {}", e.toString());
            }
        }
        return reader;
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    private void wrapReaderFactory(SourceReader<OUT, KafkaPartitionSplit> reader)
            throws ReflectiveOperationException {
        Field managerField = SourceReaderBase.class.getDeclaredField("splitFetcherManager");
        managerField.setAccessible(true);
        Object manager = managerField.get(reader);
        Field fetchersField = SplitFetcherManager.class.getDeclaredField("fetchers");
        fetchersField.setAccessible(true);
        if (!((Map<?, ?>) fetchersField.get(manager)).isEmpty()) {
            throw new IllegalArgumentException("the reader already created its fetcher");
        }
        Field factoryField = SplitFetcherManager.class.getDeclaredField("splitReaderFactory");
        factoryField.setAccessible(true);
        Supplier<SplitReader> factory = (Supplier<SplitReader>) factoryField.get(manager);
        long backoff = backoffMs;
        Supplier<SplitReader> wrapped = () -> {
            SplitReader splitReader = factory.get();
            try {
                backOffWhenIdle(splitReader, backoff);
            } catch (ReflectiveOperationException | ClassCastException e) {
                LOG.warn("idle fetch backoff not applied to {}: {}", splitReader, e.toString());
            }
            return splitReader;
        };
        factoryField.set(manager, wrapped);
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    static void backOffWhenIdle(Object splitReader, long backoffMs) throws ReflectiveOperationException {
        Field consumerField = KafkaPartitionSplitReader.class.getDeclaredField("consumer");
        consumerField.setAccessible(true);
        KafkaConsumer<?, ?> consumer = (KafkaConsumer<?, ?>) consumerField.get(splitReader);
        Field delegateField = KafkaConsumer.class.getDeclaredField("delegate");
        delegateField.setAccessible(true);
        ConsumerDelegate<?, ?> delegate = (ConsumerDelegate<?, ?>) delegateField.get(consumer);
        Object proxy = Proxy.newProxyInstance(
                ConsumerDelegate.class.getClassLoader(),
                new Class<?>[] {ConsumerDelegate.class},
                new IdleBackoff(delegate, backoffMs));
        delegateField.set(consumer, proxy);
    }

    /** poll(timeout) as poll(0) and a sleep after each empty answer, until records or the timeout. */
    static final class IdleBackoff implements InvocationHandler {
        private final ConsumerDelegate<?, ?> delegate;
        private final long backoffMs;

        IdleBackoff(ConsumerDelegate<?, ?> delegate, long backoffMs) {
            this.delegate = delegate;
            this.backoffMs = backoffMs;
        }

        @Override
        public Object invoke(Object proxy, Method method, Object[] args) throws Throwable {
            if (method.getName().equals("poll") && args != null && args.length == 1 && args[0] instanceof Duration) {
                return poll((Duration) args[0]);
            }
            try {
                return method.invoke(delegate, args);
            } catch (InvocationTargetException e) {
                throw e.getCause();
            }
        }

        private ConsumerRecords<?, ?> poll(Duration timeout) {
            long deadline = System.nanoTime() + timeout.toNanos();
            while (true) {
                ConsumerRecords<?, ?> records = delegate.poll(Duration.ZERO);
                long leftMs = (deadline - System.nanoTime()) / 1_000_000;
                if (!records.isEmpty() || leftMs <= 0) {
                    return records;
                }
                try {
                    Thread.sleep(Math.min(backoffMs, leftMs));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new InterruptException(e);
                }
            }
        }
    }

    @Override
    public SplitEnumerator<KafkaPartitionSplit, KafkaSourceEnumState> createEnumerator(
            SplitEnumeratorContext<KafkaPartitionSplit> context) {
        return source.createEnumerator(context);
    }

    @Override
    public SplitEnumerator<KafkaPartitionSplit, KafkaSourceEnumState> restoreEnumerator(
            SplitEnumeratorContext<KafkaPartitionSplit> context, KafkaSourceEnumState state) throws Exception {
        return source.restoreEnumerator(context, state);
    }

    @Override
    public SimpleVersionedSerializer<KafkaPartitionSplit> getSplitSerializer() {
        return source.getSplitSerializer();
    }

    @Override
    public SimpleVersionedSerializer<KafkaSourceEnumState> getEnumeratorCheckpointSerializer() {
        return source.getEnumeratorCheckpointSerializer();
    }

    @Override
    public TypeInformation<OUT> getProducedType() {
        return source.getProducedType();
    }
}
