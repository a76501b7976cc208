"""Small concurrency pieces shared by the pipeline's threads: a bounded queue with bulk
operations (`queues.BoundedQueue`) and values computed once per key (`once.OnceCache`)."""
