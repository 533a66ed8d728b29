package socket

// RequestMemory is what a request in flight is charged beside its data.
const RequestMemory = requestMemory
