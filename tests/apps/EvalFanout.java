// The Java fan-out tier of the linking evaluation (tests/src/topology.rs): the JDK only, run
// from source (`java EvalFanout.java LEAF_PORT`).
//
// Serves GET /r/<id> with com.sun.net.httpserver on a pool of 16 handler threads: the handler
// sends GET /b/<id> and GET /t/<id> to the Python leaf service concurrently with one shared
// java.net.http.HttpClient (HTTP/1.1, keep-alive pool, `sendAsync`), waits for both and answers
// 200 "ok <id>". The client does its socket I/O on its own selector thread and executor, not on
// the handler thread. Binds an ephemeral port on 127.0.0.1 and prints "PORT <n>" once
// listening. Nothing here knows about tracing.

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executors;

public class EvalFanout {
    static HttpClient client;
    static int leaf;

    static CompletableFuture<HttpResponse<String>> get(String path) {
        HttpRequest req = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + leaf + path)).GET().build();
        return client.sendAsync(req, HttpResponse.BodyHandlers.ofString());
    }

    static void reply(HttpExchange ex, int status, String body) throws java.io.IOException {
        byte[] b = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "text/plain");
        ex.sendResponseHeaders(status, b.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(b);
        }
    }

    public static void main(String[] args) throws Exception {
        leaf = Integer.parseInt(args[0]);
        client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 128);
        server.setExecutor(Executors.newFixedThreadPool(16));
        server.createContext("/r/", ex -> {
            String id = ex.getRequestURI().getPath().substring("/r/".length());
            try {
                CompletableFuture<HttpResponse<String>> b = get("/b/" + id), t = get("/t/" + id);
                CompletableFuture.allOf(b, t).join();
                if (b.get().statusCode() != 200 || t.get().statusCode() != 200) {
                    reply(ex, 502, "upstream failed\n");
                } else {
                    reply(ex, 200, "ok " + id + "\n");
                }
            } catch (Exception e) {
                reply(ex, 502, e + "\n");
            }
        });
        server.start();
        System.out.println("PORT " + server.getAddress().getPort());
        System.out.flush();
    }
}
