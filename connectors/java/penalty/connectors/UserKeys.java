package penalty.connectors;

import org.apache.flink.runtime.state.KeyedStateBackend;
import org.apache.flink.types.Row;

/**
 * Points a keyed state backend (state and timers) at one user: Row(userId), the key Flink's own
 * key-by gives each user. The Python operator (jobs/operators.py KeySwitch) switches user once per
 * record of a bundle and again when it writes the bundle's state: one call from Python here
 * instead of three (make the Row, set its field, set the key), each a crossing into the JVM.
 *
 * <p>An instance method: the class comes with the job's jars, in the user code class loader, which
 * the Python bridge's own class lookup does not search; Python loads it from there and makes one.
 */
public final class UserKeys {
    @SuppressWarnings({"rawtypes", "unchecked"})
    public void setCurrentUser(KeyedStateBackend backend, String userId) {
        Row key = Row.withPositions(1); // a new Row each time: the backend keeps a reference to it
        key.setField(0, userId);
        backend.setCurrentKey(key);
    }
}
