-- wrk script for the paced (light-load) runs of `cargo xtask bench`: each connection waits
-- 1 ms after every response before sending its next request, so the offered rate stays far
-- below saturation and latency is compared at (nearly) the same rate traced and untraced.
function delay()
   return 1
end
