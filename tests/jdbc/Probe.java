// pgjdbc as BI tools use it (DBeaver, DataGrip, Metabase): prepared statements past prepareThreshold and
// DatabaseMetaData. Prints one line per probe ("name: result" or "name: ERROR sqlstate message"); run as
// `java -cp /usr/share/java/postgresql.jar Probe.java <jdbc url>` with PGUSER/PGPASSWORD in the environment.
import java.sql.*;
import java.util.*;

public class Probe {
    static String rows(ResultSet rs, String... cols) throws SQLException {
        List<String> out = new ArrayList<>();
        while (rs.next()) {
            StringBuilder b = new StringBuilder();
            for (String c : cols) {
                b.append(c).append('=').append(rs.getString(c)).append(' ');
            }
            out.add(b.toString().trim());
        }
        Collections.sort(out);
        return String.join(" | ", out);
    }

    interface Step { String run(Connection c) throws SQLException; }

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", System.getenv("PGUSER"));
        p.setProperty("password", System.getenv("PGPASSWORD"));
        p.setProperty("prepareThreshold", "1");
        p.setProperty("sslmode", "disable");
        Map<String, Step> probes = new LinkedHashMap<>();
        probes.put("prepared", c -> {
            StringBuilder b = new StringBuilder();
            try (PreparedStatement s = c.prepareStatement("SELECT id, name FROM merchants WHERE id = ? AND 1 = 1")) {
                for (int i = 1; i <= 4; i++) {
                    s.setLong(1, i);
                    try (ResultSet rs = s.executeQuery()) { b.append(rows(rs, "id", "name")).append(';'); }
                }
            }
            return b.toString();
        });
        probes.put("masked", c -> {
            try (PreparedStatement s = c.prepareStatement("SELECT email, card_pan FROM payers WHERE id = ?")) {
                s.setLong(1, 1);
                try (ResultSet rs = s.executeQuery()) { return rows(rs, "email", "card_pan"); }
            }
        });
        probes.put("getTables", c -> rows(c.getMetaData().getTables(null, "public", "%", new String[] {"TABLE", "VIEW"}), "TABLE_NAME", "TABLE_TYPE"));
        probes.put("getColumns", c -> rows(c.getMetaData().getColumns(null, "public", "payers", "%"), "COLUMN_NAME", "TYPE_NAME", "DATA_TYPE", "IS_NULLABLE"));
        probes.put("getPrimaryKeys", c -> rows(c.getMetaData().getPrimaryKeys(null, "public", "payments"), "COLUMN_NAME", "PK_NAME"));
        probes.put("getImportedKeys", c -> rows(c.getMetaData().getImportedKeys(null, "public", "payments"), "PKTABLE_NAME", "FKCOLUMN_NAME", "FK_NAME"));
        probes.put("getIndexInfo", c -> rows(c.getMetaData().getIndexInfo(null, "public", "payments", false, false), "INDEX_NAME", "COLUMN_NAME"));
        probes.put("getBestRowIdentifier", c -> rows(c.getMetaData().getBestRowIdentifier(null, "public", "payers", DatabaseMetaData.bestRowSession, false), "COLUMN_NAME"));
        probes.put("getTypeInfo", c -> rows(c.getMetaData().getTypeInfo(), "TYPE_NAME"));
        probes.put("getFunctions", c -> rows(c.getMetaData().getFunctions(null, "public", "money%"), "FUNCTION_NAME"));
        probes.put("getUDTs", c -> rows(c.getMetaData().getUDTs(null, "public", "%", null), "TYPE_NAME"));
        try (Connection c = DriverManager.getConnection(args[0], p)) {
            for (Map.Entry<String, Step> e : probes.entrySet()) {
                String r;
                try {
                    r = e.getValue().run(c);
                } catch (SQLException ex) {
                    r = "ERROR " + ex.getSQLState() + " " + ex.getMessage();
                }
                System.out.println(e.getKey() + ": " + r);
            }
        }
    }
}
