//! The multi-threaded async tier of ztrace's linking evaluation (tests/src/eval.rs).
//!
//! ```text
//! ztrace-eval-async-svc THREADED_PORT
//! ```
//!
//! Serves `GET /a/<id>` with hyper 1 on a tokio runtime of four worker threads and answers each
//! after calling `GET /b/<id>` on the Python service through hyper-util's pooled keep-alive
//! client. That is the shape an event-loop-blind tracer gets wrong: a request's task can be
//! polled on any worker thread (work stealing), and the outgoing request bytes are written by the
//! pool's connection task — another task, possibly on another thread — on whichever pooled
//! connection was idle. Binds an ephemeral port on 127.0.0.1 and prints `PORT <n>` once
//! listening, like the other test apps. Nothing here knows about tracing.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;

type Pool = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let threaded_port: u16 = match std::env::args().nth(1).and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("usage: ztrace-eval-async-svc THREADED_PORT");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(serve(threaded_port)) {
        eprintln!("ztrace-eval-async-svc: {e}");
        std::process::exit(1);
    }
}

async fn serve(threaded_port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    println!("PORT {}", listener.local_addr()?.port());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let pool: Pool = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, pool.clone(), threaded_port));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    pool: Pool,
    threaded_port: u16,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let id = req
        .uri()
        .path()
        .strip_prefix("/a/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let Some(id) = id else {
        return Ok(reply(StatusCode::NOT_FOUND, "no such path\n".into()));
    };
    let uri = format!("http://127.0.0.1:{threaded_port}/b/{id}");
    let outcome = async {
        let uri: hyper::Uri = uri.parse().map_err(|e| format!("{uri}: {e}"))?;
        let resp = pool.get(uri).await.map_err(|e| format!("GET /b: {e}"))?;
        let status = resp.status();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("GET /b body: {e}"))?;
        if status != StatusCode::OK {
            return Err(format!("GET /b: {status}"));
        }
        Ok(())
    }
    .await;
    Ok(match outcome {
        Ok(()) => reply(StatusCode::OK, format!("ok {id}\n")),
        Err(e) => reply(StatusCode::BAD_GATEWAY, format!("{e}\n")),
    })
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
