"""Publish simulated notifications to a RabbitMQ queue (compose.yaml's
`simulate` service): python publish.py AMQP_URL QUEUE COUNT."""

import asyncio
import subprocess
import sys

import aio_pika


async def main(url: str, queue: str, count: int) -> None:
    lines = subprocess.run(["engine", "simulate", "--count", str(count)], check=True,
                           capture_output=True).stdout.splitlines()
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for line in lines:
            await channel.default_exchange.publish(
                aio_pika.Message(line, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)
    print(f"published {len(lines)} notifications to {queue}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
