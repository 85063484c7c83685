/*
 * The JDBC side of test/compat/jdbc.test.ts: runs one scenario with the
 * PostgreSQL JDBC driver and prints what it saw as JSON lines, one per step:
 *   {"step": "...", "result": ...}            the step worked
 *   {"step": "...", "error": "25006", "message": "..."}  it threw an SQLException
 * The TypeScript side asserts on those lines (and compares runs through the
 * proxy with runs straight to the server).
 *
 * Usage: java -cp DIR:postgresql.jar Compat SCENARIO JDBC_URL [ARG]
 * with the credentials in PGRO_JDBC_USER and PGRO_JDBC_PASSWORD.
 */
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.sql.Types;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.core.BaseConnection;

public final class Compat {
  @FunctionalInterface
  interface SqlCall {
    Object call() throws Exception;
  }

  private static String url;

  public static void main(String[] args) throws Exception {
    url = args[1];
    String arg = args.length > 2 ? args[2] : null;
    switch (args[0]) {
      case "statement" -> statement();
      case "prepared" -> prepared();
      case "fetch-size" -> fetchSize();
      case "read-only-transaction" -> readOnlyTransaction();
      case "read-only-always" -> readOnlyAlways();
      case "metadata" -> metadata("autocommit-off".equals(arg));
      case "write-refused" -> writeRefused();
      case "failed-transaction" -> failedTransaction(arg, false);
      case "failed-transaction-first" -> failedTransaction(arg, true);
      case "query-timeout" -> queryTimeout();
      case "cancel" -> cancel();
      case "copy" -> copy();
      case "literals" -> literals();
      default -> throw new IllegalArgumentException("unknown scenario " + args[0]);
    }
  }

  static Connection connect() throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", System.getenv("PGRO_JDBC_USER"));
    p.setProperty("password", System.getenv("PGRO_JDBC_PASSWORD"));
    return DriverManager.getConnection(url, p);
  }

  /** Statement.executeQuery / execute with the driver's defaults. */
  static void statement() throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      step("select", () -> rows(st.executeQuery("SELECT id, name, price FROM jdbc_items WHERE id <= 3 ORDER BY id")));
      step("count", () -> rows(st.executeQuery("SELECT count(*), sum(id) FROM jdbc_items")));
      step("execute", () -> {
        boolean isResult = st.execute("SELECT name FROM jdbc_items WHERE id = 42");
        return List.of(isResult, rows(st.getResultSet()));
      });
      step("multiple-results", () -> {
        st.execute("SELECT 1 AS a; SELECT 'two' AS b");
        List<Object> out = new ArrayList<>();
        do out.add(rows(st.getResultSet())); while (st.getMoreResults());
        return out;
      });
      step("read-only", () -> rows(st.executeQuery("SHOW transaction_read_only")));
    }
  }

  /** prepareThreshold=1 in the URL: named server-side statements from the first execution. */
  static void prepared() throws Exception {
    try (Connection c = connect()) {
      try (PreparedStatement ps = c.prepareStatement("SELECT name, price FROM jdbc_items WHERE id = ?")) {
        for (int id : new int[] {1, 2, 3, 500, 1000, 1001}) {
          ps.setInt(1, id);
          step("by-id " + id, () -> rows(ps.executeQuery()));
        }
        step("server-prepared", () -> ps.unwrap(PGStatement.class).isUseServerPrepare());
      }
      // One statement, its parameter bound with a different type each time (the driver
      // prepares it again for each new type), each twice.
      try (PreparedStatement ps =
          c.prepareStatement("SELECT x::text AS v, pg_typeof(x)::text AS t FROM (SELECT ? AS x) s")) {
        Object[][] binds = {
          {"int", 7},
          {"int", 8},
          {"string", "Zoë \\ 'quoted'"},
          {"string", "plain"},
          {"numeric", new BigDecimal("12.50")},
          {"numeric", new BigDecimal("-1")},
          {"bool", true},
          {"bool", false},
          {"timestamp", Timestamp.valueOf("2024-02-29 12:34:56")},
          {"timestamp", Timestamp.valueOf("1999-12-31 23:59:59")},
          {"null", null},
          {"null", null},
          {"int", 9},
        };
        for (Object[] b : binds) {
          switch ((String) b[0]) {
            case "int" -> ps.setInt(1, (Integer) b[1]);
            case "string" -> ps.setString(1, (String) b[1]);
            case "numeric" -> ps.setBigDecimal(1, (BigDecimal) b[1]);
            case "bool" -> ps.setBoolean(1, (Boolean) b[1]);
            case "timestamp" -> ps.setTimestamp(1, (Timestamp) b[1]);
            default -> ps.setNull(1, Types.INTEGER);
          }
          step("typed " + b[0], () -> rows(ps.executeQuery()));
        }
      }
      try (Statement st = c.createStatement()) {
        step(
            "pg_prepared_statements",
            () ->
                rows(
                    st.executeQuery(
                        "SELECT name, statement, parameter_types::text FROM pg_prepared_statements"
                            + " WHERE NOT from_sql ORDER BY name")));
      }
    }
  }

  /** setFetchSize with autocommit off: Execute with a row limit, PortalSuspended, Execute again. */
  static void fetchSize() throws Exception {
    try (Connection c = connect()) {
      c.setAutoCommit(false);
      for (String round : new String[] {"first", "after commit"}) {
        try (PreparedStatement ps = c.prepareStatement("SELECT id, name FROM jdbc_items ORDER BY id");
            Statement probe = c.createStatement()) {
          ps.setFetchSize(100);
          ResultSet rs = ps.executeQuery();
          int n = 0;
          long sum = 0;
          boolean inOrder = true;
          Object portals = null;
          while (rs.next()) {
            n++;
            int id = rs.getInt(1);
            sum += id;
            if (id != n || !("item " + id).equals(rs.getString(2))) inOrder = false;
            if (n == 1) {
              // The rest of the result is still waiting in an open portal.
              portals =
                  rows(probe.executeQuery("SELECT name, statement FROM pg_cursors ORDER BY name"));
            }
          }
          step(round, List.of(n, sum, inOrder));
          step(round + ": open portals after the first row", portals);
          rs.close();
        }
        c.commit();
      }
    }
  }

  /** readOnlyMode=transaction (the default): setReadOnly(true) makes the driver send BEGIN READ ONLY. */
  static void readOnlyTransaction() throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      c.setAutoCommit(false);
      step("setReadOnly(true)", () -> {
        c.setReadOnly(true);
        return c.isReadOnly();
      });
      step("select", () -> rows(st.executeQuery("SELECT count(*), current_setting('transaction_read_only') FROM jdbc_items")));
      step("commit", () -> {
        c.commit();
        return true;
      });
      step("select again", () -> rows(st.executeQuery("SELECT name FROM jdbc_items WHERE id = 5")));
      step("rollback", () -> {
        c.rollback();
        return true;
      });
      step("setReadOnly(false)", () -> {
        c.setReadOnly(false);
        return c.isReadOnly();
      });
      step("select read-write", () -> rows(st.executeQuery("SHOW transaction_read_only")));
      step("commit read-write", () -> {
        c.commit();
        return true;
      });
    }
  }

  /** readOnlyMode=always: setReadOnly sends SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY / WRITE. */
  static void readOnlyAlways() throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      step("setReadOnly(true)", () -> {
        c.setReadOnly(true);
        return c.isReadOnly();
      });
      step("default_transaction_read_only", () -> rows(st.executeQuery("SHOW default_transaction_read_only")));
      step("select", () -> rows(st.executeQuery("SELECT name FROM jdbc_items WHERE id = 6")));
      step("setReadOnly(false)", () -> {
        c.setReadOnly(false);
        return c.isReadOnly();
      });
      step("select after", () -> rows(st.executeQuery("SELECT name FROM jdbc_items WHERE id = 7")));
    }
  }

  /** DatabaseMetaData, as ORMs and GUI tools use it. */
  static void metadata(boolean autocommitOff) throws Exception {
    try (Connection c = connect()) {
      if (autocommitOff) c.setAutoCommit(false);
      DatabaseMetaData md = c.getMetaData();
      step("product", () ->
          List.of(md.getDatabaseProductName(), md.getDatabaseProductVersion(), md.getDatabaseMajorVersion(),
              md.getDatabaseMinorVersion(), md.getUserName()));
      step("getTables", () -> rows(md.getTables(null, "public", "jdbc%", new String[] {"TABLE", "VIEW"})));
      step("getColumns", () -> rows(md.getColumns(null, "public", "jdbc_items", "%")));
      step("getPrimaryKeys", () -> rows(md.getPrimaryKeys(null, "public", "jdbc_items")));
      step("getIndexInfo", () -> rows(md.getIndexInfo(null, "public", "jdbc_items", false, false)));
      step("getSchemas", () -> rows(md.getSchemas(null, "pg_%")));
      step("getProcedures", () -> rows(md.getProcedures(null, "pg_catalog", "pg_backend_pid")));
      if (autocommitOff) c.commit();
      // A pattern escaped with getSearchStringEscape() (a backslash), as tools do for
      // names holding '_'; with autocommit off it opens a new transaction.
      String escaped = "jdbc" + md.getSearchStringEscape() + "_items";
      step("getColumns escaped pattern", () -> rows(md.getColumns(null, "public", escaped, "%")));
      if (autocommitOff) c.commit();
    }
  }

  /** Writes are refused with 25006 and the connection is still usable (autocommit on). */
  static void writeRefused() throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      step("insert", () -> st.executeUpdate("INSERT INTO jdbc_items (id, name) VALUES (5001, 'x')"));
      step("insert prepared", () -> {
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO jdbc_items (id, name) VALUES (?, ?)")) {
          ps.setInt(1, 5002);
          ps.setString(2, "y");
          return ps.executeUpdate();
        }
      });
      step("update batch", () -> {
        try (PreparedStatement ps = c.prepareStatement("UPDATE jdbc_items SET name = ? WHERE id = ?")) {
          for (int id = 1; id <= 3; id++) {
            ps.setString(1, "changed");
            ps.setInt(2, id);
            ps.addBatch();
          }
          return List.of(ps.executeBatch());
        }
      });
      step("select after", () -> rows(st.executeQuery("SELECT count(*), min(name) FROM jdbc_items")));
    }
  }

  /**
   * Autocommit off, a failing statement in a transaction: the transaction is failed
   * (25P02) until rollback. `first`: the failing statement opens the transaction (the
   * driver's BEGIN travels in the same batch).
   */
  static void failedTransaction(String sql, boolean first) throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      c.setAutoCommit(false);
      BaseConnection base = c.unwrap(BaseConnection.class);
      if (!first) step("before", () -> rows(st.executeQuery("SELECT name FROM jdbc_items WHERE id = 8")));
      step("failing statement", () -> st.execute(sql));
      step("transaction state", base.getTransactionState().toString());
      step("next statement", () -> rows(st.executeQuery("SELECT 1")));
      step("prepared statement", () -> {
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int")) {
          ps.setInt(1, 2);
          return rows(ps.executeQuery());
        }
      });
      step("rollback", () -> {
        c.rollback();
        return base.getTransactionState().toString();
      });
      step("after rollback", () -> rows(st.executeQuery("SELECT count(*) FROM jdbc_items")));
      step("commit", () -> {
        c.commit();
        return base.getTransactionState().toString();
      });
    }
  }

  /** Statement.setQueryTimeout: the driver cancels the query with a CancelRequest. */
  static void queryTimeout() throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      st.setQueryTimeout(1);
      long t0 = System.nanoTime();
      step("pg_sleep(5) with a 1 s timeout", () -> rows(st.executeQuery("SELECT pg_sleep(5)")));
      long ms = (System.nanoTime() - t0) / 1_000_000;
      step("took less than 4 s", ms < 4000);
      st.setQueryTimeout(0);
      step("select after", () -> rows(st.executeQuery("SELECT 1")));
    }
  }

  /** Statement.cancel from another thread, once the query runs on the server. */
  static void cancel() throws Exception {
    String text = "SELECT pg_sleep(5.5)";
    try (Connection c = connect(); Connection watcher = connect(); Statement st = c.createStatement()) {
      Thread canceller =
          new Thread(() -> {
            try (PreparedStatement ps =
                watcher.prepareStatement(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = ? AND state = 'active'")) {
              ps.setString(1, text);
              long deadline = System.currentTimeMillis() + 5000;
              while (System.currentTimeMillis() < deadline) {
                try (ResultSet rs = ps.executeQuery()) {
                  rs.next();
                  if (rs.getInt(1) > 0) break;
                }
                Thread.sleep(10);
              }
              st.cancel();
            } catch (Exception e) {
              throw new RuntimeException(e);
            }
          });
      long t0 = System.nanoTime();
      canceller.start();
      step("pg_sleep(5.5) cancelled", () -> rows(st.executeQuery(text)));
      canceller.join();
      long ms = (System.nanoTime() - t0) / 1_000_000;
      step("took less than 4 s", ms < 4000);
      step("select after", () -> rows(st.executeQuery("SELECT 1")));
    }
  }

  /** CopyManager: COPY TO STDOUT streams; COPY FROM STDIN is refused. */
  static void copy() throws Exception {
    try (Connection c = connect(); Statement st = c.createStatement()) {
      CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
      step("copyOut", () -> {
        StringWriter w = new StringWriter();
        long n = copy.copyOut("COPY (SELECT id, name FROM jdbc_items ORDER BY id) TO STDOUT", w);
        String[] lines = w.toString().split("\n");
        return List.of(n, lines.length, lines[0], lines[lines.length - 1]);
      });
      step("copyIn", () -> copy.copyIn("COPY jdbc_items (id, name) FROM STDIN", new StringReader("5003\tz\n")));
      step("select after", () -> rows(st.executeQuery("SELECT count(*) FROM jdbc_items")));
    }
  }

  /** Non-ASCII and backslash characters in SQL text, with autocommit on and off. */
  static void literals() throws Exception {
    String nonAscii = "SELECT 'Zoë' AS a";
    String backslash = "SELECT 'C:\\temp' AS b";
    try (Connection c = connect(); Statement st = c.createStatement()) {
      step("autocommit on: non-ASCII", () -> rows(st.executeQuery(nonAscii)));
      step("autocommit on: backslash", () -> rows(st.executeQuery(backslash)));
      c.setAutoCommit(false);
      for (String[] q : new String[][] {{"non-ASCII", nonAscii}, {"backslash", backslash}}) {
        step("autocommit off, first statement of a transaction: " + q[0], () -> rows(st.executeQuery(q[1])));
        c.rollback();
        step("autocommit off, after a plain first statement: " + q[0], () -> {
          st.executeQuery("SELECT 1").close();
          return rows(st.executeQuery(q[1]));
        });
        c.rollback();
      }
      step("autocommit off, as a bind parameter", () -> {
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::text AS a")) {
          ps.setString(1, "Zoë C:\\temp");
          return rows(ps.executeQuery());
        }
      });
      c.rollback();
    }
  }

  // ---- output ----

  static void step(String name, SqlCall call) {
    Map<String, Object> line = new LinkedHashMap<>();
    line.put("step", name);
    try {
      line.put("result", call.call());
    } catch (SQLException e) {
      SQLException cause = e instanceof BatchUpdateException && e.getNextException() != null ? e.getNextException() : e;
      line.put("error", cause.getSQLState());
      line.put("message", cause.getMessage());
    } catch (Exception e) {
      throw new RuntimeException(name, e);
    }
    System.out.println(json(line));
  }

  static void step(String name, Object result) {
    step(name, () -> result);
  }

  /** Every row as a list of the driver's text forms (getString), column names first. */
  static List<Object> rows(ResultSet rs) throws SQLException {
    List<Object> out = new ArrayList<>();
    try (rs) {
      ResultSetMetaData md = rs.getMetaData();
      List<Object> names = new ArrayList<>();
      for (int i = 1; i <= md.getColumnCount(); i++) names.add(md.getColumnLabel(i));
      out.add(names);
      while (rs.next()) {
        List<Object> row = new ArrayList<>();
        for (int i = 1; i <= md.getColumnCount(); i++) row.add(rs.getString(i));
        out.add(row);
      }
    }
    return out;
  }

  static String json(Object v) {
    if (v == null) return "null";
    if (v instanceof Boolean || v instanceof Integer || v instanceof Long) return v.toString();
    if (v instanceof int[] a) {
      List<Object> l = new ArrayList<>();
      for (int x : a) l.add(x);
      return json(l);
    }
    if (v instanceof List<?> l) {
      StringBuilder b = new StringBuilder("[");
      for (Object x : l) b.append(b.length() > 1 ? "," : "").append(json(x));
      return b.append(']').toString();
    }
    if (v instanceof Map<?, ?> m) {
      StringBuilder b = new StringBuilder("{");
      for (Map.Entry<?, ?> e : m.entrySet())
        b.append(b.length() > 1 ? "," : "").append(json(String.valueOf(e.getKey()))).append(':').append(json(e.getValue()));
      return b.append('}').toString();
    }
    String s = v.toString();
    StringBuilder b = new StringBuilder("\"");
    for (char ch : s.toCharArray()) {
      switch (ch) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        case '\n' -> b.append("\\n");
        case '\r' -> b.append("\\r");
        case '\t' -> b.append("\\t");
        default -> {
          if (ch < 0x20 || ch > 0x7e) b.append(String.format("\\u%04x", (int) ch));
          else b.append(ch);
        }
      }
    }
    return b.append('"').toString();
  }
}
