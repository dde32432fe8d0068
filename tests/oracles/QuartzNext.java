// The Quartz oracle for Kairos's 6- and 7-field schedules (used by services/core/tests/oracles.rs):
// the real org.quartz.CronExpression (Debian's libquartz2-java) computes the next fire times.
//
// Reads one query per line from stdin -- expression, IANA zone, start (RFC 3339), count, separated
// by tabs -- and writes one answer per line: "OK" then the times (RFC 3339 UTC), or "ERROR" and
// the message, separated by tabs. Run as a single source file:
//   java -cp /usr/share/java/quartz2.jar tests/oracles/QuartzNext.java
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.time.Instant;
import java.util.Date;
import java.util.TimeZone;
import org.quartz.CronExpression;

public class QuartzNext {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        StringBuilder out = new StringBuilder();
        String line;
        while ((line = in.readLine()) != null) {
            String[] query = line.split("\t");
            StringBuilder answer = new StringBuilder("OK");
            try {
                CronExpression cron = new CronExpression(query[0]);
                cron.setTimeZone(TimeZone.getTimeZone(query[1]));
                Date t = Date.from(Instant.parse(query[2]));
                int count = Integer.parseInt(query[3]);
                for (int i = 0; i < count; i++) {
                    t = cron.getNextValidTimeAfter(t);
                    if (t == null) {
                        break;
                    }
                    answer.append('\t').append(t.toInstant().toString());
                }
            } catch (Exception e) {
                answer = new StringBuilder("ERROR\t");
                answer.append(String.valueOf(e.getMessage()).replace('\n', ' '));
            }
            out.append(answer);
            out.append('\n');
        }
        System.out.print(out);
    }
}
